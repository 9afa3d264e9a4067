"""lesson_lib: the tested implementations behind the course notebooks."""
