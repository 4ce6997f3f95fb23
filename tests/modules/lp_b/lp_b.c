// SPDX-License-Identifier: GPL-2.0
/*
 * lp_b: a livepatch of lp_target only, without annotations: the command
 * line chooses (klpsym build --sympos OBJ:NAME=N) the SECOND lpt_homonym
 * and lpt_homonym_fn (lpt_aux.c's) and vmlinux's printk_time (lp_target
 * has one too).  Replaces lpt_report_get(); reading
 * /sys/module/lp_target/parameters/report returns
 * "klptest lp_b: sym=NAME ... value=N" lines.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/moduleparam.h>

#define TAG "klptest lp_b: "

/* lp_target's statics (tests/modules/lp_target) */
extern int lpt_homonym;
extern int lpt_homonym_fn(void);
#ifdef LPT_COUNT_SYM	/* lp_target's count.N, when the build says N */
extern unsigned int lpt_count asm(LPT_COUNT_SYM);
#endif
/* vmlinux's: the bool behind /sys/module/printk/parameters/time */
extern bool printk_time;

#define EMIT(fmt, ...) \
	(n += scnprintf(buf + n, PAGE_SIZE - n, TAG fmt "\n", ##__VA_ARGS__))

static int livepatch_lpt_report_get(char *buf, const struct kernel_param *kp)
{
	int n = 0;

	EMIT("sym=lpt_homonym via=text pos=2 addr=%px value=%d",
	     &lpt_homonym, READ_ONCE(lpt_homonym));
	EMIT("sym=lpt_homonym_fn via=call pos=2 value=%d", lpt_homonym_fn());
#ifdef LPT_COUNT_SYM
	EMIT("sym=count via=text addr=%px value=%u", &lpt_count, READ_ONCE(lpt_count));
#endif
	EMIT("sym=printk_time via=text obj=vmlinux addr=%px value=%d",
	     &printk_time, READ_ONCE(printk_time) ? 1 : 0);
	return n;
}

static struct klp_func target_funcs[] = {
	{ .old_name = "lpt_report_get", .new_func = livepatch_lpt_report_get, },
	{ }
};

static struct klp_object objs[] = {
	{ .name = "lp_target", .funcs = target_funcs, },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int lp_b_init(void)
{
	return klp_enable_patch(&patch);
}

static void lp_b_exit(void)
{
}

module_init(lp_b_init);
module_exit(lp_b_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klpsym test: a livepatch of lp_target, positions from the command line");
