/*
 * unit.h - every unit test binary is one Check suite; UNIT_MAIN gives it a
 * main() that runs the suite in fork mode and exits non-zero on failure.
 */
#ifndef IDEM_UNIT_H
#define IDEM_UNIT_H

#include <check.h>
#include <stdlib.h>

#define UNIT_MAIN(make_suite)                                                                      \
    int main(void)                                                                                 \
    {                                                                                              \
        SRunner *runner = srunner_create(make_suite());                                            \
        srunner_set_fork_status(runner, CK_FORK);                                                  \
        srunner_run_all(runner, CK_NORMAL);                                                        \
        int failed = srunner_ntests_failed(runner);                                                \
        srunner_free(runner);                                                                      \
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;                                          \
    }

#endif
