"""Our subcommands, one module each with ``run(argv)`` (``vdistill.cli`` imports a module only when its command
runs), and the LightningCLI of ``vdistill fit / validate / test / predict`` (:mod:`vdistill.commands.lightning_cli`).
Only this layer reads argv and config files."""
