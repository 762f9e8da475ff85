"""Moving a site from Postfix to vSL: ``vsl migrate postfix`` translates a Postfix
configuration into a vSL policy directory.

    maincf.py        main.cf and master.cf: parameters, their lines, $name expansion, defaults
    tables.py        lookup tables (hash, btree, texthash, inline, cidr, pcre, regexp) as vSL data
    restrictions.py  each smtpd_*_restrictions list as a vSL function
    translate.py     the whole directory: main.vsl, tables.vsl, vsl.toml, MIGRATION.md
    postfix.vsl      Postfix's restrictions and reply texts in vSL, copied beside main.vsl
"""
