"""What the conformance upstream offers: the tools, prompts, resources and elicitation schemas the
MCP conformance suite's server scenarios name, and the small image and audio clip they return."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import mcp_types as types


def _png_one_red_pixel() -> str:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte, then red
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def _wav_of_silence(samples: int = 8) -> str:
    data = b"\x00\x00" * samples  # 16-bit mono
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return base64.b64encode(b"RIFF" + struct.pack("<I", len(body)) + body).decode()


PNG = _png_one_red_pixel()
WAV = _wav_of_silence()
SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


def _takes(**fields: str) -> dict[str, Any]:
    properties = {name: {"type": "string", "description": about} for name, about in fields.items()}
    return {"type": "object", "properties": properties, "required": list(fields)}


TOOLS = [
    types.Tool(name="test_simple_text", description="Answers with one text block.", input_schema=NO_ARGUMENTS),
    types.Tool(name="test_image_content", description="Answers with a PNG image.", input_schema=NO_ARGUMENTS),
    types.Tool(name="test_audio_content", description="Answers with a WAV clip.", input_schema=NO_ARGUMENTS),
    types.Tool(name="test_embedded_resource", description="Answers with a resource.", input_schema=NO_ARGUMENTS),
    types.Tool(name="test_multiple_content_types", description="Text, image and resource.", input_schema=NO_ARGUMENTS),
    types.Tool(name="test_tool_with_logging", description="Logs three lines as it runs.", input_schema=NO_ARGUMENTS),
    types.Tool(name="test_error_handling", description="Always fails, as a tool result.", input_schema=NO_ARGUMENTS),
    types.Tool(name="test_tool_with_progress", description="Reports progress 0, 50, 100.", input_schema=NO_ARGUMENTS),
    types.Tool(name="test_sampling", description="Asks the client's model.", input_schema=_takes(prompt="the prompt")),
    types.Tool(
        name="test_elicitation", description="Asks the client's user.", input_schema=_takes(message="the question")
    ),
    types.Tool(name="test_elicitation_sep1034_defaults", description="Asks with defaults.", input_schema=NO_ARGUMENTS),
    types.Tool(name="test_elicitation_sep1330_enums", description="Asks with enums.", input_schema=NO_ARGUMENTS),
    types.Tool(name="test_reconnection", description="Closes its stream mid-call.", input_schema=NO_ARGUMENTS),
    types.Tool(
        name="json_schema_2020_12_tool",
        description="Tool with JSON Schema 2020-12 features",
        input_schema={
            "$schema": SCHEMA_2020_12,
            "type": "object",
            "$defs": {
                "address": {
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                }
            },
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": False,
        },
    ),
]

PROMPTS = [
    types.Prompt(name="test_simple_prompt", description="A prompt without arguments."),
    types.Prompt(
        name="test_prompt_with_arguments",
        description="A prompt that names its two arguments.",
        arguments=[
            types.PromptArgument(name="arg1", description="First test argument", required=True),
            types.PromptArgument(name="arg2", description="Second test argument", required=True),
        ],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt that embeds a resource.",
        arguments=[types.PromptArgument(name="resourceUri", description="the URI to embed", required=True)],
    ),
    types.Prompt(name="test_prompt_with_image", description="A prompt with an image."),
]

RESOURCES = [
    types.Resource(uri="test://static-text", name="static-text", description="Fixed text.", mime_type="text/plain"),
    types.Resource(uri="test://static-binary", name="static-binary", description="A PNG.", mime_type="image/png"),
    types.Resource(
        uri="test://watched-resource", name="watched-resource", description="Subscribable.", mime_type="text/plain"
    ),
]
TEMPLATES = [
    types.ResourceTemplate(
        uri_template="test://template/{id}/data",
        name="template-data",
        description="Data for one id.",
        mime_type="application/json",
    )
]

IDENTITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"},
    },
    "required": ["username", "email"],
}
DEFAULTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "score": {"type": "number", "default": 95.5},
        "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
        "verified": {"type": "boolean", "default": True},
    },
}


def _titled(prefix: str, titles: list[str]) -> list[dict[str, str]]:
    return [{"const": f"{prefix}{n}", "title": title} for n, title in enumerate(titles, start=1)]


ENUMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {"type": "string", "oneOf": _titled("value", ["First Option", "Second Option", "Third"])},
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {"type": "array", "items": {"anyOf": _titled("value", ["First Choice", "Second", "Third"])}},
    },
}
