"""The Lark grammar of vSL (vsl.lark), installed as package data."""
