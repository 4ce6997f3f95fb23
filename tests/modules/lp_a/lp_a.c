// SPDX-License-Identifier: GPL-2.0
/*
 * lp_a: a hand-written livepatch (samples/livepatch style) with two
 * klp_objects, converted by klpsym convert --target-module lp_target.ko.
 *
 * vmlinux: replaces cmdline_proc_show(), so /proc/cmdline reads LP_A_CMDLINE
 *   while the patch is enabled (the real function patch).  Reads the
 *   unexported sysctl_max_map_count (from .text, and through a pointer in
 *   .data), calls the unexported kallsyms_lookup_name(), and tests the
 *   unexported static key sched_schedstats with static_branch_unlikely()
 *   (a __jump_table entry against a vmlinux key).
 *
 * lp_target: replaces lpt_report_get(), so reading
 *   /sys/module/lp_target/parameters/report prints what the patch sees of
 *   lp_target's statics: the FIRST lpt_homonym and lpt_homonym_fn (two of
 *   each, chosen with KLP_MODULE_RELOC/KLP_SYMPOS POS 1), lp_target's
 *   printk_time (vmlinux has one too: the annotation names the object),
 *   gcc's count.N, and lpt_data/lpt_ro/lpt_rm through pointers held in this
 *   module's .data, .rodata and .data..read_mostly (and directly from .text).
 *
 * Output: "klptest lp_a: sym=NAME via=SECTION addr=%px value=N" lines, in
 * what reading the parameter returns.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/moduleparam.h>
#include <linux/seq_file.h>
#include <linux/jump_label.h>
#include <linux/cache.h>
#include <klpsym.h>

#ifndef LPT_COUNT_SYM
#error "LPT_COUNT_SYM (lp_target's count.N) is not set"
#endif

#define TAG "klptest lp_a: "
#define LP_A_CMDLINE "lp_a: this has been live patched"

/* lp_target's statics (tests/modules/lp_target) */
extern int lpt_homonym;
extern int lpt_homonym_fn(void);
extern int printk_time;
extern int lpt_data;
extern const int lpt_ro;
extern int lpt_rm;
extern unsigned int lpt_count asm(LPT_COUNT_SYM);

KLP_MODULE_RELOC(lp_target) lp_a_relocs[] = {
	KLP_SYMPOS(lpt_homonym, 1),
	KLP_SYMPOS(lpt_homonym_fn, 1),
	KLP_SYMPOS(printk_time, 0),
};

/* vmlinux internals, none exported */
extern int sysctl_max_map_count;		/* mm/mmap.c (7.x: no header) */
extern struct static_key_false sched_schedstats;	/* kernel/sched/core.c */
unsigned long kallsyms_lookup_name(const char *name);

/* Pointers to the target's data, in this module's data sections. */
static int *lp_data_ptr __used = &lpt_data;			/* .data */
static const int *const lp_ro_ptr __used = &lpt_ro;		/* .rodata */
static int *lp_rm_ptr __read_mostly __used = &lpt_rm;		/* .data..read_mostly */
static int *lp_vm_ptr __used = &sysctl_max_map_count;		/* .data, vmlinux */

/* Appends "klptest lp_a: ..." lines to the parameter's page (what user space reads). */
#define EMIT(fmt, ...) \
	(n += scnprintf(buf + n, PAGE_SIZE - n, TAG fmt "\n", ##__VA_ARGS__))

static noinline int lp_a_vmlinux(char *buf, int n)
{
	int *vm = READ_ONCE(lp_vm_ptr);

	EMIT("sym=sysctl_max_map_count via=text addr=%px value=%d",
	     &sysctl_max_map_count, READ_ONCE(sysctl_max_map_count));
	EMIT("sym=sysctl_max_map_count via=data addr=%px value=%d", vm, READ_ONCE(*vm));
	EMIT("sym=kallsyms_lookup_name via=call stext=%px",
	     (void *)kallsyms_lookup_name("_stext"));
	EMIT("sym=sched_schedstats via=jump_table branch=%d enabled=%d addr=%px",
	     static_branch_unlikely(&sched_schedstats) ? 1 : 0,
	     static_key_enabled(&sched_schedstats) ? 1 : 0, &sched_schedstats);
	return n;
}

/* No printk here: gcc would call the function cold and move it to .text.unlikely. */
static int livepatch_lpt_report_get(char *buf, const struct kernel_param *kp)
{
	int *data = READ_ONCE(lp_data_ptr);
	const int *ro = READ_ONCE(lp_ro_ptr);
	int *rm = READ_ONCE(lp_rm_ptr);
	int n = 0;

	EMIT("sym=lpt_homonym via=text pos=1 addr=%px value=%d",
	     &lpt_homonym, READ_ONCE(lpt_homonym));
	EMIT("sym=lpt_homonym_fn via=call pos=1 value=%d", lpt_homonym_fn());
	EMIT("sym=printk_time via=text addr=%px value=%d", &printk_time, READ_ONCE(printk_time));
	EMIT("sym=count via=text addr=%px value=%u", &lpt_count, READ_ONCE(lpt_count));
	EMIT("sym=lpt_data via=text addr=%px value=%d", &lpt_data, READ_ONCE(lpt_data));
	EMIT("sym=lpt_data via=data addr=%px value=%d", data, READ_ONCE(*data));
	EMIT("sym=lpt_ro via=text addr=%px value=%d", &lpt_ro, READ_ONCE(lpt_ro));
	EMIT("sym=lpt_ro via=rodata addr=%px value=%d", ro, READ_ONCE(*ro));
	EMIT("sym=lpt_rm via=text addr=%px value=%d", &lpt_rm, READ_ONCE(lpt_rm));
	EMIT("sym=lpt_rm via=read_mostly addr=%px value=%d", rm, READ_ONCE(*rm));
	return lp_a_vmlinux(buf, n);
}

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", LP_A_CMDLINE);
	return 0;
}

static struct klp_func vmlinux_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = livepatch_cmdline_proc_show, },
	{ }
};

static struct klp_func target_funcs[] = {
	{ .old_name = "lpt_report_get", .new_func = livepatch_lpt_report_get, },
	{ }
};

static struct klp_object objs[] = {
	{ /* name NULL: vmlinux */ .funcs = vmlinux_funcs, },
	{ .name = "lp_target", .funcs = target_funcs, },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int lp_a_init(void)
{
	return klp_enable_patch(&patch);
}

static void lp_a_exit(void)
{
	/* written somewhere, so that gcc keeps them in .data */
	WRITE_ONCE(lp_data_ptr, NULL);
	WRITE_ONCE(lp_rm_ptr, NULL);
	WRITE_ONCE(lp_vm_ptr, NULL);
}

module_init(lp_a_init);
module_exit(lp_a_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klpsym test: a livepatch of vmlinux and lp_target");
