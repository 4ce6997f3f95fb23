// SPDX-License-Identifier: GPL-2.0
/*
 * two_files, part A: a composite module (two_files-y := part_a.o part_b.o).
 * Each object file is compiled separately and then linked with `ld -r`, so
 * each brings its own undefined references; klpsym sees the linked .ko.
 *
 * Part A calls the unexported kallsyms_lookup_name() from .init.text.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kallsyms.h>
#include "two_files.h"

static int __init two_files_init(void)
{
	unsigned long got = kallsyms_lookup_name("_printk");
	unsigned long want = (unsigned long)_printk;

	pr_info("klptest two_files: part=a got=%px want=%px match=%d\n",
		(void *)got, (void *)want, got == want && got != 0);
	two_files_part_b();
	return 0;
}

static void __exit two_files_exit(void)
{
}

module_init(two_files_init);
module_exit(two_files_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: a module built from two .c files");
