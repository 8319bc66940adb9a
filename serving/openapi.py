"""OpenAPI descriptions of the request bodies the routes parse by hand (they take a raw Request so that
nothing is decoded before the limits are checked). The schema is what clients and the fuzz test
(tests/serving/test_fuzz.py) read; the shapes in it are loose on purpose: the service checks them and
answers a 4xx naming the expected shape."""

from __future__ import annotations

BINARY = {"type": "string", "format": "binary"}
ERROR = {
    "description": 'refused: {"error": reason}',
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
        }
    },
}
_REFUSALS = {
    "401": {**ERROR, "description": "no or wrong API key (when keys are set); WWW-Authenticate: Bearer"},
    "429": {**ERROR, "description": "over the caller's rate limit; Retry-After says when to retry"},
}
KEYED = {"responses": _REFUSALS}
_COMPUTE = {
    **_REFUSALS,
    "503": {**ERROR, "description": "saturated: too many requests in progress; Retry-After"},
    "400": ERROR,
    "413": ERROR,
    "415": ERROR,
    "422": ERROR,
}

CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": BINARY},
            "image/jpeg": {"schema": BINARY},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": BINARY}, "required": ["image"]}
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "additionalProperties": False,
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "array"},
                            "description": "uint8 pixels: [N, C, S, S], [N, S, S, C] or (grey) [N, S, S]; "
                            "GET /metadata states C and S",
                        }
                    },
                }
            },
            "application/x-npy": {"schema": BINARY},
        },
    },
    "responses": _COMPUTE,
}
GENERATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["label"],
                    "additionalProperties": False,
                    "properties": {
                        "label": {"type": "integer", "minimum": 0},
                        "n": {"type": "integer", "minimum": 1, "maximum": 256},
                        "seed": {"type": "integer", "minimum": 0},
                        "format": {"type": "string", "enum": ["png", "array"]},
                        "steps": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "DDIM steps, diffusion generator only (at most MEDGEN_MAX_STEPS; "
                            "default: the exported default_steps)",
                        },
                        "guidance": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 10,
                            "description": "classifier-free guidance scale, diffusion generator only "
                            "(default: the exported default_guidance)",
                        },
                    },
                }
            }
        },
    },
    "responses": _COMPUTE,
}
