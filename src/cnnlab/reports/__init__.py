"""Reading finished runs: figures (`plots/`), the embedding analysis, the CIFAR results table
and HTML report, the reference report's claims checked, the margin study's comparison.
Nothing here loads a data set or trains: it reads the files runs wrote."""
