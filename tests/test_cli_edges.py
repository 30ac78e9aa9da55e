"""The rough edges a first try found in `captioner` and `lm` (issue 11): each is a one-line error or a right answer."""

import argparse
import json
import os
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def run(main, argv, capsys):
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, prog="captioner"):
    lines = err.strip().splitlines()
    return rc == 2 and len(lines) == 1 and lines[0].startswith(f"{prog}: error:") and "Traceback" not in err


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from captioner.scenes import generate_scenes
    out = tmp_path_factory.mktemp("edge-scenes")
    generate_scenes(out, 2, seed=777)
    return str(out / "images" / "00001.png")


def captioner_main(argv, capsys):
    from captioner.cli import main
    return run(main, argv, capsys)


def lm_main(argv, capsys):
    from lm.cli import main
    return run(main, argv, capsys, )


def test_max_length_must_be_positive(scene, capsys):
    for value in ("-5", "0", "x"):
        rc, out, err = captioner_main(["caption", scene, "--max-length", value], capsys)
        assert one_line_error(rc, err) and "--max-length" in err and out == ""
    rc, out, err = captioner_main(["caption", scene, "--max-length", "2", "--json"], capsys)
    assert rc == 0 and len(json.loads(out)[0]["caption"].split()) <= 2


def test_attention_out_is_a_folder_for_both_commands(scene, tmp_path, capsys):
    existing = tmp_path / "taken.png"
    existing.write_bytes(b"keep me")
    for argv in (["caption", scene], ["ask", scene, "what color is the circle"]):
        rc, out, err = captioner_main([*argv, "--attention-out", existing], capsys)
        assert one_line_error(rc, err) and "not a folder" in err and out == ""
        rc, out, err = captioner_main([*argv, "--attention-out", tmp_path / "new.png"], capsys)
        assert one_line_error(rc, err) and "looks like a file name" in err
    assert existing.read_bytes() == b"keep me"
    for argv in (["caption", scene], ["ask", scene, "what color is the circle"]):
        folder = tmp_path / f"pictures-{argv[0]}"  # a path without an extension: made as a folder
        rc, out, err = captioner_main([*argv, "--attention-out", folder, "--json"], capsys)
        picture = folder / "00001.attention.png"
        assert rc == 0 and picture.stat().st_size > 1000, err
        row = json.loads(out)
        assert (row[0] if isinstance(row, list) else row)["attention_png"] == str(picture)


def test_unicode_questions_are_answered_and_unknown_words_named(scene, capsys):
    rc, out, err = captioner_main(["ask", scene, "これは何ですか", "--json"], capsys)
    assert rc == 0 and json.loads(out)["unknown_words"] == ["これは何ですか"]
    assert "no word is in the model's vocabulary (これは何ですか)" in err
    rc, out, err = captioner_main(["ask", scene, "qué color is the circle", "--json"], capsys)
    assert rc == 0 and json.loads(out)["unknown_words"] == ["qué"]


def test_same_bad_image_same_exit_code(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    rc1, _, err1 = captioner_main(["caption", bad], capsys)
    rc2, _, err2 = captioner_main(["ask", bad, "what color is the circle"], capsys)
    assert one_line_error(rc1, err1) and one_line_error(rc2, err2)


def test_model_folder_of_the_wrong_kind_is_named(scene, capsys):
    from captioner.model import BUNDLED
    from lm.checkpoint import BUNDLED_MODEL
    rc, _, err = captioner_main(["caption", scene, "--model", BUNDLED_MODEL], capsys)
    assert one_line_error(rc, err) and "language-model folder" in err and "None" not in err
    rc, _, err = captioner_main(["ask", scene, "what", "--model", BUNDLED["caption"]], capsys)
    assert one_line_error(rc, err) and "this is a captioner folder, not a VQA model folder" in err
    rc, _, err = lm_main(["generate", "--model", BUNDLED["vqa"]], capsys)
    assert one_line_error(rc, err, "lm") and "VQA model folder" in err


def test_train_refuses_flags_of_the_other_task(tmp_path, capsys):
    from captioner.cli import TRAIN_FLAG_TASKS
    from captioner.scenes import generate_scenes
    scenes = generate_scenes(tmp_path / "scenes", 12, seed=5)
    out = tmp_path / "never-written"
    for data, flag, task in ((scenes["vqa"], ["--max-length", "5"], "vqa"),
                             (scenes["vqa"], ["--no-attention"], "vqa"),
                             (scenes["vqa"], ["--init-from-lm", tmp_path], "vqa"),
                             (scenes["dataset"], ["--hops", "3"], "caption"),
                             (scenes["dataset"], ["--vqa-mode=blind"], "caption")):
        rc, _, err = captioner_main(["train", data, "--out", out, *flag], capsys)
        assert one_line_error(rc, err) and flag[0].split("=")[0] in err and f"apply to {task} training" in err
    assert not out.exists()
    assert TRAIN_FLAG_TASKS["hops"] == ("vqa",) and "dropout" not in TRAIN_FLAG_TASKS  # --dropout: both tasks


def test_evaluate_without_model_refuses_data_that_is_not_scenes(capsys):
    data = os.path.join(FIXTURES, "flickr8k")
    rc, _, err = captioner_main(["evaluate", data], capsys)
    assert one_line_error(rc, err) and "not synthetic scenes data" in err and "--model" in err


def test_huge_image_is_one_line_and_max_pixels_allows_it(tmp_path, capsys):
    from PIL import Image
    huge = tmp_path / "huge.png"
    Image.new("L", (10_000, 10_000), 90).save(huge)  # 100 megapixels, over Pillow's own warning limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = captioner_main(["caption", huge], capsys)
    assert one_line_error(rc, err) and "100,000,000 pixels" in err and "--max-pixels" in err
    assert not [w for w in caught if "DecompressionBomb" in type(w.message).__name__]
    rc, out, err = captioner_main(["caption", huge, "--max-pixels", "120000000", "--json"], capsys)
    assert rc == 0 and json.loads(out)[0]["caption"]


def test_perplexity_reports_unknown_words_and_suggests_raw(tmp_path, capsys):
    prose = tmp_path / "prose.txt"
    prose.write_text("Hello, World! Quantum chromodynamics is hard.\nThe cat sat on the mat, twice.\n")
    rc, out, err = lm_main(["perplexity", prose, "--json"], capsys)
    report = json.loads(out)
    assert rc == 0 and report["oov_rate"] > 0.4 and report["tokens"] == 15
    assert "not in the model's vocabulary" in err and "--raw" in err
    rc, out, err = lm_main(["perplexity", prose, "--raw", "--json"], capsys)
    assert rc == 0 and json.loads(out)["oov_rate"] < report["oov_rate"] and "--raw" not in err
    rc, _, err = lm_main(["perplexity", tmp_path], capsys)
    assert one_line_error(rc, err, "lm") and "is a folder" in err


def test_generate_echoes_the_prompt_and_names_unknown_words(capsys):
    rc, out, err = lm_main(["generate", "--prompt", "And God said, Xyzzy!", "--max-tokens", "5", "--seed", "1"],
                           capsys)
    assert rc == 0 and out.startswith("And God said, Xyzzy! ") and 1 <= len(out.split()) - 4 <= 5
    assert "xyzzy" in err and "<unk>" in err


def _options(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {opt}", a, sub) for opt, a, _ in _options(sub))
        elif action.option_strings and action.dest != "help":
            yield action.option_strings[0], action, parser


@pytest.mark.parametrize("module", ["captioner.cli", "lm.cli"])
def test_every_option_says_what_it_does_and_its_default(module):
    import importlib
    parser = importlib.import_module(module).build_parser()
    missing = []
    for name, action, sub in _options(parser):
        rendered = sub.formatter_class(sub.prog)._get_help_string(action)
        if not action.help or len(action.help) < 8:
            missing.append(f"{name}: no help")
        elif not (action.nargs == 0 or action.required or "default" in rendered):  # switches, required options
            missing.append(f"{name}: no default in {rendered!r}")
    assert not missing, "\n".join(missing)


def test_inference_commands_start_without_tensorflow(scene):
    """`captioner caption` as a user runs it: Keras' NumPy backend, TensorFlow never imported, the same caption."""
    code = ("import sys; from captioner.cli import main; rc = main(['caption', sys.argv[1], '--json']); "
            "import keras; print(keras.backend.backend(), sys.modules.get('tensorflow') is not None, rc)")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.run([sys.executable, "-c", code, scene], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows, status = proc.stdout.strip().splitlines()
    assert status == "numpy False 0"
    from captioner import Captioner
    assert json.loads(rows)[0]["caption"] == Captioner.load().caption(scene).caption
