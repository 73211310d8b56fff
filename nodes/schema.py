"""The nodes in ComfyUI's typed schema (``comfy_api.latest``: ``io.ComfyNode``, ``define_schema``, ``execute``,
``ComfyExtension`` through ``comfy_entrypoint``), generated from the same declarations (:mod:`.inputs`) as the
classic form, with the same node ids, input names, types and defaults, so saved workflows load unchanged.
``execute`` calls the classic class's method: one implementation for both forms.

Only imported where ``comfy_api.latest`` imports (ComfyUI 0.3.4x and later).
"""

from __future__ import annotations

from typing import Any

from comfy_api.latest import ComfyExtension, io

from .definitions import CATEGORY, CLASSIC_NODES
from .inputs import NodeInput, NodeOutputSpec, NodeSpec

_TYPES: dict[str, Any] = {
    "IMAGE": io.Image, "MASK": io.Mask, "INT": io.Int, "FLOAT": io.Float, "COMBO": io.Combo,
}


def _io_type(kind: str) -> Any:
    return _TYPES.get(kind) or io.Custom(kind)


def _input(item: NodeInput) -> Any:
    kind = _io_type(item.kind)
    arguments: dict[str, Any] = {"optional": item.optional, "tooltip": item.tooltip}
    if item.default is not None:
        arguments["default"] = item.default
    if item.kind == "COMBO":
        arguments["options"] = item.choice_list()
    for name, value in (("min", item.minimum), ("max", item.maximum), ("step", item.step)):
        if value is not None:
            arguments[name] = value
    return kind.Input(item.name, **arguments)


def _output(item: NodeOutputSpec) -> Any:
    return _io_type(item.kind).Output(display_name=item.name, tooltip=item.tooltip)


def typed_node(classic: type) -> type[io.ComfyNode]:
    """The typed form of a classic node class (same :class:`NodeSpec`, same work)."""
    spec: NodeSpec = classic.SPEC  # type: ignore[attr-defined]

    class TypedNode(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(
                node_id=spec.node_id,
                display_name=spec.display_name,
                category=CATEGORY,
                description=spec.description,
                inputs=[_input(item) for item in spec.inputs],
                outputs=[_output(item) for item in spec.outputs],
            )

        @classmethod
        def execute(cls, **inputs: Any) -> io.NodeOutput:
            return io.NodeOutput(*getattr(classic(), spec.function)(**inputs))

    validate = classic.__dict__.get("VALIDATE_INPUTS")
    if validate is not None:  # the typed form's name for the same check (ComfyUI reads the inputs it names)
        TypedNode.validate_inputs = classmethod(validate.__func__)  # type: ignore[attr-defined]
    TypedNode.__name__ = TypedNode.__qualname__ = f"{classic.__name__}Typed"
    return TypedNode


TYPED_NODES: list[type[io.ComfyNode]] = [typed_node(classic) for classic in CLASSIC_NODES]


class OpticalFlowExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(TYPED_NODES)


async def comfy_entrypoint() -> OpticalFlowExtension:
    """What ComfyUI calls to load the typed nodes."""
    return OpticalFlowExtension()
