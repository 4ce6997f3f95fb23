// SPDX-License-Identifier: GPL-2.0
/*
 * lp_target: the module the livepatches lp_a and lp_b patch (klp_object
 * "lp_target").  Nothing here is exported: every symbol the livepatches use
 * is a static, reached through .klp.rela.lp_target.* relocations that the
 * kernel applies when the patch is enabled with lp_target loaded, or when
 * lp_target loads after the patch (klp_module_coming).
 *
 * What the livepatches look for (values in lpt.h):
 *   lpt_homonym, lpt_homonym_fn()  static in lpt_main.c AND lpt_aux.c: two
 *       kallsyms entries each, POS 1 and 2 in the module's symbol order;
 *   printk_time    a name vmlinux also has (kernel/printk/printk.c), so a
 *       livepatch must say which object it means;
 *   count          function-local static of lpt_counter(): gcc names it
 *       count.N, the test reads N from the built lp_target.ko;
 *   lpt_data, lpt_ro, lpt_rm  in .data, .rodata, .data..read_mostly.
 *
 * At init it prints, for each of them, "klptest lp_target: sym=NAME
 * file=FILE addr=%px value=N" (the target's own report, which the test
 * holds the livepatches' printout to).  The module parameter "report" is
 * read-only; reading it calls lpt_report_get(), the function the
 * livepatches replace: the original answers "lp_target original count=N".
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/kernel.h>
#include <linux/cache.h>
#include "lpt.h"

#define TAG "klptest lp_target: "

static int lpt_homonym __used = LPT_HOMONYM_MAIN;
static int printk_time __used = LPT_PRINTK_TIME;
static int lpt_data __used = LPT_DATA;
static const int lpt_ro __used = LPT_RO;
static int lpt_rm __read_mostly __used = LPT_RM;

static noinline __used int lpt_homonym_fn(void)
{
	return LPT_HOMONYM_FN_MAIN;
}

static noinline unsigned int *lpt_counter(void)
{
	static unsigned int count = LPT_COUNT_START;

	WRITE_ONCE(count, READ_ONCE(count) + 1);
	return &count;
}

static int lpt_report_get(char *buf, const struct kernel_param *kp)
{
	unsigned int *count = lpt_counter();

	pr_info(TAG "sym=count file=main addr=%px value=%u\n", count, READ_ONCE(*count));
	return scnprintf(buf, PAGE_SIZE, "lp_target original count=%u\n", READ_ONCE(*count));
}

static const struct kernel_param_ops lpt_report_ops = {
	.get = lpt_report_get,
};
module_param_cb(report, &lpt_report_ops, NULL, 0444);
MODULE_PARM_DESC(report, "reading it calls lpt_report_get(), which the livepatches replace");

static int __init lpt_init(void)
{
	unsigned int *count = lpt_counter();

	pr_info(TAG "sym=lpt_homonym file=main addr=%px value=%d\n",
		&lpt_homonym, READ_ONCE(lpt_homonym));
	pr_info(TAG "sym=lpt_homonym_fn file=main addr=%px value=%d\n",
		lpt_homonym_fn, lpt_homonym_fn());
	pr_info(TAG "sym=printk_time file=main addr=%px value=%d\n",
		&printk_time, READ_ONCE(printk_time));
	pr_info(TAG "sym=lpt_data file=main addr=%px value=%d\n", &lpt_data, READ_ONCE(lpt_data));
	pr_info(TAG "sym=lpt_ro file=main addr=%px value=%d\n", &lpt_ro, READ_ONCE(lpt_ro));
	pr_info(TAG "sym=lpt_rm file=main addr=%px value=%d\n", &lpt_rm, READ_ONCE(lpt_rm));
	pr_info(TAG "sym=count file=main addr=%px value=%u\n", count, READ_ONCE(*count));
	lpt_aux_report();
	return 0;
}

static void __exit lpt_exit(void)
{
	/* written somewhere, so that gcc keeps them writable (in .data) */
	WRITE_ONCE(lpt_homonym, 0);
	WRITE_ONCE(printk_time, 0);
	WRITE_ONCE(lpt_data, 0);
	WRITE_ONCE(lpt_rm, 0);
}

module_init(lpt_init);
module_exit(lpt_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: the target module of the livepatches lp_a and lp_b");
