// SPDX-License-Identifier: GPL-2.0
/*
 * lp_target, second file: the homonyms of lpt_main.c's statics (the second
 * kallsyms entry of each name, lpt_main.o being linked first).
 */
#include <linux/kernel.h>
#include <linux/printk.h>
#include "lpt.h"

#define TAG "klptest lp_target: "

static int lpt_homonym __used = LPT_HOMONYM_AUX;

static noinline __used int lpt_homonym_fn(void)
{
	return LPT_HOMONYM_FN_AUX;
}

void lpt_aux_report(void)
{
	pr_info(TAG "sym=lpt_homonym file=aux addr=%px value=%d\n",
		&lpt_homonym, READ_ONCE(lpt_homonym));
	pr_info(TAG "sym=lpt_homonym_fn file=aux addr=%px value=%d\n",
		lpt_homonym_fn, lpt_homonym_fn());
	WRITE_ONCE(lpt_homonym, READ_ONCE(lpt_homonym));
}
