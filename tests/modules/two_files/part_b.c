// SPDX-License-Identifier: GPL-2.0
/*
 * two_files, part B: reads the unexported variable kptr_restrict (the int
 * behind /proc/sys/kernel/kptr_restrict; the test compares) and calls the
 * unexported core_kernel_text() (kernel/extable.c): 1 for an address in
 * vmlinux's text, 0 for one in this module.
 */
#include <linux/kernel.h>
#include <linux/printk.h>	/* extern int kptr_restrict; */
#include "two_files.h"

int two_files_part_b(void)
{
	int kernel_text = core_kernel_text((unsigned long)_printk);
	int module_text = core_kernel_text((unsigned long)two_files_part_b);

	pr_info("klptest two_files: part=b kptr_restrict=%d addr=%px core_text_printk=%d core_text_module=%d match=%d\n",
		READ_ONCE(kptr_restrict), &kptr_restrict, kernel_text, module_text,
		kernel_text == 1 && module_text == 0);
	return 0;
}
