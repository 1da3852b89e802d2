"""``mmeff app``'s options, and the install hint when Gradio is missing (no Gradio or browser needed)."""

import argparse
import sys

import pytest

from mmeff.app import INSTALL_HINT, add_arguments, build_app, launch


def test_options_default_to_the_bundled_models():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert args.model.endswith("shapes-llava") and args.sd_model.endswith("shapes-sd")
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    args = parser.parse_args(["--port", "9000", "--host", "0.0.0.0", "--share", "--sd-model", "none"])
    assert (args.host, args.port, args.share, args.sd_model) == ("0.0.0.0", 9000, True, "none")


def test_missing_gradio_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(ImportError, match=r"mmeff\[app\]"):
        build_app()
    args = argparse.Namespace(model="m", sd_model="none", host="127.0.0.1", port=1, share=False)
    with pytest.raises(SystemExit, match=r"pip install 'mmeff\[app\]'"):
        launch(args)
    assert "gradio" in INSTALL_HINT
