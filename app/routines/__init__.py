"""Routine files: Markdown with YAML front matter read into `Routine`s (`files`, `reader`, `fields`,
`triggers`), their JSON Schema (`schema`), and the catalog of files and API-made routines (`catalog`,
`admin`).
"""
