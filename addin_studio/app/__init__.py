"""The applications on top of the public API: the ``addin-studio`` command (:mod:`.cli`), the headless
demo (:mod:`.demo`) and its HTML report (:mod:`.report`). Submodules load on import only."""
