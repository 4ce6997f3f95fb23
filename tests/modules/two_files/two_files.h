/* SPDX-License-Identifier: GPL-2.0 */
#ifndef KLPTEST_TWO_FILES_H
#define KLPTEST_TWO_FILES_H

int two_files_part_b(void);

#endif
