"""Body templates (`format = "template"`): a subscriber's own Jinja2 template.

`sandbox` compiles and renders (no I/O, no config), `worker` is the process a render runs
in, `pool` runs renders in those processes within their time cap, `body` picks any
subscriber's body. Kept free of imports here, so that the configuration can compile a
template without pulling in the delivery code.
"""
