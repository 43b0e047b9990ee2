"""The live Gradio app: pick a teacher and a prune ratio, watch dreams form and accuracy recover.

The app holds no method code of its own. :mod:`demo.runner` turns the controls into a
:class:`dfkd_core.RecoveryConfig` and drives :func:`dfkd_core.recover`; :mod:`demo.views`
renders the events it yields; :mod:`demo.app` lays out the page and launches it.
"""
