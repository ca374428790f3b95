"""``forwardforward identities`` (placeholder, replaced by the full command)."""


def add_parser(sub) -> None:
    p = sub.add_parser("identities", help="measure the softplus family's identities")
    p.add_argument("--plot", default=None)
    p.set_defaults(func=lambda args: 0)
