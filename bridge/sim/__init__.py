"""What `simulate`, `demo` and the tests run instead of the real world: the Munsit simulator,
the demo's script and a clock that moves only when told to. Never imported by the service."""
