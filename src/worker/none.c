/* none.c — keeps the worker library non-empty before its first module lands. */
int lyra_worker_library_present;
