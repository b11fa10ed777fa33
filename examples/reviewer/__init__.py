"""The labs reviewer (shared/seeds 004): long jobs moved out of web-framework background tasks onto Tierbox,
with an in-process local-development mode and a redacted final-failure path."""
