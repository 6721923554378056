from __future__ import annotations

from typing import Any

from addons.layer_patch import Method, patch_once


class Layer:
    def send(self, event: str) -> list[str]:
        return [event]


def exclaiming(original: Method) -> Method:
    def send(self: Any, event: str) -> list[str]:
        return original(self, event + "!")

    return send


def test_the_wrapper_goes_on_once_however_often_it_is_installed() -> None:
    class Patched(Layer):
        pass

    patch_once(Patched, "send", exclaiming)
    first = Patched.send
    patch_once(Patched, "send", exclaiming)  # a reloaded script installs again

    assert Patched.send is first
    assert Patched().send("hi") == ["hi!"]  # wrapped once, not twice around itself
    assert Layer().send("hi") == ["hi"]
