"""One module per `edge-gfs` subcommand: thin shells that parse flags and call the layers below."""
