"""The serving limits without a server: the JSON scan, settings parsing, the input contract, the token bucket."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from medgen.config import ServeConfig
from serving.bounded import BadInput, json_shape, parse_json
from serving.contract import Contract, ModelError
from serving.guard import Guard, TokenBucket
from serving.settings import DEFAULTS, Settings, SettingsError, from_env, key_id

KEY = "k" * 20


def values(obj) -> int:
    inner = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    return 1 + sum(values(v) for v in inner)


@pytest.mark.parametrize(
    "text,depth,bound",
    [
        (b"1", 0, 1),
        (b"[]", 1, 2),
        (b"[1, 2, 3]", 1, 4),
        (b'{"images": [[1, 2], [3, 4]]}', 3, 8),
        (b'["[[[[", "]]", {"a": ",,,"}]', 2, 5),  # brackets and commas inside strings do not count
        (b'["a\\"[[[", 1]', 1, 3),  # an escaped quote does not end the string
    ],
)
def test_json_shape_counts_structure_outside_strings(text, depth, bound):
    assert json_shape(text) == (depth, bound)
    assert values(json.loads(text)) <= bound  # an upper bound on the values json.loads would build


def test_deep_json_is_refused_before_decoding():
    """Far deeper than the recursion limit: json.loads would raise RecursionError; the scan answers 400."""
    deep = b"[" * (sys.getrecursionlimit() * 10) + b"]" * (sys.getrecursionlimit() * 10)
    with pytest.raises(BadInput) as refused:
        parse_json(deep, max_depth=8, max_elements=10**6)
    assert refused.value.status == 400 and "10000 levels deep" in refused.value.reason
    assert parse_json(b'{"a": [[[1]]]}', max_depth=4, max_elements=10) == {"a": [[[1]]]}
    with pytest.raises(BadInput, match="nested 5 levels"):
        parse_json(b'{"a": [[[[1]]]]}', max_depth=4, max_elements=10)


def test_many_values_are_refused_before_decoding():
    body = b"[" + b",".join([b"0"] * 5000) + b"]"
    with pytest.raises(BadInput) as refused:
        parse_json(body, max_depth=8, max_elements=4999)
    assert refused.value.status == 413 and "5001 values" in refused.value.reason
    assert len(parse_json(body, max_depth=8, max_elements=5001)) == 5000


@pytest.mark.parametrize("body", [b"", b"  ", b"[1, 2", b"\xff\xfe", b'{"a": 1e99999999999999999999}' + b"x"])
def test_malformed_json_is_400(body):
    with pytest.raises(BadInput) as refused:
        parse_json(body, max_depth=8, max_elements=100)
    assert refused.value.status == 400


def test_settings_defaults_match_the_config_section():
    """serving/settings.py and medgen.config.ServeConfig state the same defaults (the service runs without medgen)."""
    config = ServeConfig()
    assert {key: getattr(config, key) for key in DEFAULTS} == DEFAULTS
    assert from_env(config.environment()) == Settings()


@pytest.mark.parametrize(
    "env,match",
    [
        ({"MEDGEN_MAX_JSON_DEPTH": "deep"}, "MEDGEN_MAX_JSON_DEPTH='deep': expected an integer"),
        ({"MEDGEN_MAX_BATCH": "0"}, "MEDGEN_MAX_BATCH=0: must be in 1..4096"),
        ({"MEDGEN_RATE_PER_S": "-1"}, "MEDGEN_RATE_PER_S=-1: must be in"),
        ({"MEDGEN_API_KEYS": "short"}, "API key #1 .* needs >= 16"),  # pragma: allowlist secret
        ({"MEDGEN_API_KEYS_FILE": "/nonexistent/keys"}, "cannot read it"),
        ({"MEDGEN_ALLOW_ANONYMOUS": "maybe"}, "expected 1 or 0"),
    ],
)
def test_bad_settings_name_the_variable(env, match):
    with pytest.raises(SettingsError, match=match) as refused:
        from_env(env)
    assert "\n" not in str(refused.value) and "short" not in str(refused.value).replace("API key", "")


def test_keys_from_variable_and_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# operators\n{'a' * 16}\n\n{'b' * 24}\n")
    settings = from_env({"MEDGEN_API_KEYS": f" {KEY} ,{'a' * 16}", "MEDGEN_API_KEYS_FILE": str(path)})
    assert settings.api_keys == (KEY, "a" * 16, "b" * 24)
    assert KEY not in repr(settings) and settings.key_ids == [key_id(KEY), key_id("a" * 16), key_id("b" * 24)]
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(SettingsError, match="holds no key"):
        from_env({"MEDGEN_API_KEYS_FILE": str(empty)})


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_contract_from_metadata_and_graph():
    assert Contract.from_metadata({"input_shape": [3, 32, 32]}, ["batch", 3, 32, 32], "m") == Contract(3, 32)
    assert Contract.from_metadata({"input_size": 64}, ["batch", 1, 64, 64], "m") == Contract(1, 64)  # fallback
    with pytest.raises(ModelError, match="graph takes"):
        Contract.from_metadata({"input_size": 28}, ["batch", 3, 28, 28], "m")
    for bad in ({"input_shape": [2, 28, 28]}, {"input_shape": [1, 28, 30]}, {"input_size": 512}, {}):
        with pytest.raises(ModelError, match="not \\[C, S, S\\]"):
            Contract.from_metadata(bad, ["batch", 1, 28, 28], "m")


def test_contract_layouts():
    rgb, grey = Contract(3, 32), Contract(1, 28)
    x = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
    assert np.array_equal(rgb.to_nchw(x, 4), np.moveaxis(x, -1, 1))  # channels last -> first
    assert np.array_equal(rgb.to_nchw(np.moveaxis(x, -1, 1), 4), np.moveaxis(x, -1, 1))
    assert grey.to_nchw(np.zeros((28, 28)), 4).shape == (1, 1, 28, 28)
    assert grey.to_nchw(np.zeros((5, 28, 28)), 5).shape == (5, 1, 28, 28)
    with pytest.raises(BadInput) as refused:
        rgb.to_nchw(np.zeros((2, 28, 28)), 4)
    assert refused.value.status == 422 and "expected [N, 3, 32, 32] or [N, 32, 32, 3]" in refused.value.reason
    with pytest.raises(BadInput) as refused:
        rgb.to_nchw(np.zeros((5, 3, 32, 32)), 4)
    assert refused.value.status == 413


def test_image_conversion_to_the_contract():
    grey = (np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)
    rgb = Contract(3, 32).decode_image(png(grey), 10**6)
    assert rgb.shape == (3, 32, 32) and np.array_equal(rgb[0], rgb[2])  # grey upload -> 3 equal channels
    colour = np.stack([grey, 255 - grey, np.zeros_like(grey)], axis=-1)
    assert Contract(1, 64).decode_image(png(colour), 10**6).shape == (1, 64, 64)
    sixteen = grey.astype(np.uint16) * 257  # 16-bit grey scales to the same 8-bit picture (not clipped to 255)
    assert np.array_equal(Contract(1, 28).decode_image(png(sixteen), 10**6)[0], grey)
    with pytest.raises(BadInput) as refused:
        Contract(1, 28).decode_image(png(np.zeros((100, 100), dtype=np.uint8)), 99 * 100)
    assert refused.value.status == 413 and "100x100" in refused.value.reason


def test_token_bucket_and_guard_order():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [0, 0, 0, 0.5]
    assert bucket.take(0.5) == 0.0  # one token back after 1/rate s
    guard = Guard(Settings(rate_per_s=1.0, rate_burst=2, max_inflight=1, api_keys=(KEY,)), clock=lambda: now[0])
    assert guard.check(None, "1.2.3.4", True)[1].status == 401
    wrong = guard.check("Bearer " + "x" * 20, "1.2.3.4", True)[1]
    assert wrong.status == 401 and 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    caller, admitted = guard.check(f"Bearer {KEY}", "1.2.3.4", True)
    assert admitted is None and caller == f"key:{key_id(KEY)}"
    with guard.slot(caller):  # the one in-flight slot is taken: a new compute request is refused at once
        busy = guard.check(f"bearer {KEY}", "5.6.7.8", True)[1]
        assert busy.status == 503 and busy.headers["Retry-After"] == "1"
        with pytest.raises(BadInput) as no_slot, guard.slot(caller):
            pass
        assert no_slot.value.status == 503 and no_slot.value.headers["Retry-After"] == "1"
    assert guard.inflight == 0
    limited = guard.check(f"Bearer {KEY}", "1.2.3.4", False)[1]  # burst of 2 spent (the 503 took a token)
    assert limited.status == 429 and limited.headers["Retry-After"] == "1"
    now[0] = 1.0
    assert guard.check(f"Bearer {KEY}", "1.2.3.4", False)[1] is None
    assert guard.counts == {"admitted": 2, "401": 2, "429": 1, "503": 2}
