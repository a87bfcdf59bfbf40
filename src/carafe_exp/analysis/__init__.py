"""Analysis tools: complexity accounting and the tables printed beside the papers."""
