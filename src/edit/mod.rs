//! Pure file editors: each edit is `fn(&str, …) -> Result<String>` with an exact reverse.
