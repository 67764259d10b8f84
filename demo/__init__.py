"""The web demo (`anydoor demo`): a Gradio page for teleporting an object, tested in a real browser.

``generation`` is the one module that calls the model pipeline; ``inputs`` turns what the page gives
into model inputs (pure functions); ``app`` is the page; ``server`` starts it safely. Importing this
package imports neither Gradio nor torch.
"""
