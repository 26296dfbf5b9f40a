"""Foundations every other layer imports: errors, atomic file I/O (`files`), typed configs,
registries, the environment record, progress lines, seeding and the names of run files.
Nothing here imports another cnnlab layer."""
