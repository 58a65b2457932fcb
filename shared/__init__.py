"""Domain library shared by the function app, the trainer and the parties' CLI."""
