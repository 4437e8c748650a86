"""Stores: state shared between processes and kept beyond one (today Redis, for many
hosts). Each store wraps the system's token source, so the TokenActor's logic is the same
with or without one."""
