"""Upstream APIs (GoIP SMS Server, smsgo, PaaSoo, c123) behind one interface; pure parsers."""
