"""``tug build``: the Dockerfile parser (:mod:`.dockerfile`), ``.dockerignore`` (:mod:`.dockerignore`),
overlay upper dirs turned into layer tars (:mod:`.layers`) and the step executor with its cache
(:mod:`.builder`). See docs/design.md, "Build"."""
