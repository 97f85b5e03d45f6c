"""Reviewing in the browser: accounts, drafts and the web app that verifies and signs a slide.

The pieces are plain modules a notebook can use (:mod:`.accounts`, :mod:`.drafts`, :mod:`.slides`); the
web app (:mod:`.app`) wires them behind a login.  Signing goes through :func:`wbcproc.verify.sign`, the
same code as workbook verification.
"""
