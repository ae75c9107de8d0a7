"""One module per kind of annotator; `lmlm.annotate.registry` is the table that names them."""
