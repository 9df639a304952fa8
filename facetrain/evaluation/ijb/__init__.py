"""IJB-B and IJB-C: template-based 1:1 verification and 1:N identification, as the field reports them."""
