"""`cnnlab faces serve` (registered with the other face-model commands in `cli.faces_use`):
checks that the address can be listened on, loads the model once, hands the app of
`cnnlab.serve` to uvicorn."""
from __future__ import annotations


def serve(args, load_verifier) -> int:
    """`faces serve`, loading the model with `load_verifier(model, args, **options)` (`cli.faces_use`'s)."""
    from cnnlab.core.errors import CnnlabError
    try:
        import uvicorn

        from cnnlab.serve import ServeLimits, create_app
    except ImportError as exc:
        raise CnnlabError(f"`faces serve` needs FastAPI and uvicorn ({exc.name} is missing): "
                          "pip install 'cnnlab[serve]'") from None
    from cnnlab.verifier import DEFAULT_MAX_PIXELS, GalleryIndex
    limits = ServeLimits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                         max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    _check_port(args.host, args.port)  # before minutes of loading; uvicorn's own failure is six lines
    verifier = load_verifier(args.model, args, max_pixels=limits.max_pixels)
    index = GalleryIndex.open(args.index) if args.index else None
    app = create_app(verifier, index, limits, show_paths=args.show_paths)
    print(f"serving {verifier.source} ({verifier.runtime.name})"
          + (f" with {index.count} indexed images" if index is not None else "")
          + f" on http://{args.host}:{args.port}/  (API docs: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _check_port(host: str, port: int) -> None:
    """One line, exit 2, when HOST:PORT cannot be listened on, with the hint that fits: a port
    in use or reserved (--port), or a host that is not an address of this machine (--host)."""
    import errno
    import socket

    from cnnlab.core.errors import CnnlabError
    try:
        with socket.create_server((host, port)):
            pass
    except (OSError, OverflowError, UnicodeError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            hint = "another server on that port? choose one with --port"
        elif isinstance(exc, OSError) and exc.errno == errno.EACCES:
            hint = "ports below 1024 need privileges; choose another with --port"
        else:  # unknown name, not an address, not an address of this machine
            hint = "--host must be a name or an IP address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
        reason = reason.split(" (while attempting to bind")[0]  # socket.create_server's addition: said above
        raise CnnlabError(f"cannot listen on {host}:{port}: {reason} ({hint})") from None

