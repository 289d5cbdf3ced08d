"""The upstream APIs (GoIP SMS Server, smsgo, PaaSoo, c123): one module each behind one
interface, pure parsers, and the SMS encoding rules every hop shares."""
