"""The `bigrerank` subcommands: one module each, holding its argument dataclasses, their validation and `main(argv)`."""
