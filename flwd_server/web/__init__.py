"""The thin HTTP layer: parse, authorise, call the engine, render."""
