"""tugd: the supervisor daemon. Imports nothing from shimd/."""
