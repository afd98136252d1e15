"""One module per subcommand; see :mod:`lightreasoner.cli`."""
