"""What every sub-command shares: the one-line error, path quoting for Hydra's grammar, and a Hydra app
over one of conf/'s top-level configs."""

from __future__ import annotations

import os
import sys

from ganlab.errors import GanlabError


def report_error(message: str) -> None:
    """`ganlab: error: <message>` on stderr: the one line a user error ends in."""
    try:
        from rich.console import Console
        from rich.text import Text

        Console(stderr=True, highlight=False, soft_wrap=True).print(Text.assemble(("ganlab: error: ", "bold red"), message))
    except Exception:  # pragma: no cover - rich missing or broken terminal
        print(f"ganlab: error: {message}", file=sys.stderr)


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def quote_paths(args: list[str], keys: tuple[str, ...]) -> list[str]:
    """Paths of sweep runs hold '=' and ',' (`0_model=gan,seed=1`), which Hydra's override grammar
    reads as syntax: quote such values of path keys so `run=`/`resume=` take them as they are."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in keys and value[:1] not in ("'", '"') and any(c in value for c in "=, []{}()"):
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def hydra_command(config_name: str, run, args: list[str], path_keys: tuple[str, ...]) -> int:
    """A Hydra app over conf/<config_name>.yaml whose task is `run(cfg)`; user errors end in one message."""
    import hydra

    from ganlab.config import config_dir

    def task(cfg):
        try:
            run(cfg)
        except GanlabError as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            report_error(str(exc))
            sys.exit(2)

    main = hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")(task)
    sys.argv = ["ganlab", *quote_paths(args, path_keys)]
    main()
    return 0
