// Never compiled: its compile command in compile_commands.json carries the tests' flags, which
// scripts/make_pch.py precompiles test/support/tests_pch.hpp with.
