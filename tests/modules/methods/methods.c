// SPDX-License-Identifier: GPL-2.0
/*
 * methods: ONE source built for each of klpsym.h's three methods (klp,
 * kallsyms, kprobe: -DKLPSYM_METHOD=...), as klpsym_<method>.ko.  Each calls
 * an unexported function and reads and writes an unexported variable, and
 * prints what it got, so the test compares it with what the guest sees:
 *
 *   bpf_get_current_pid_tgid()  BPF_CALL_0 in kernel/bpf/helpers.c, global,
 *       not exported; returns (u64)current->tgid << 32 | current->pid.  Its
 *       address is taken in vmlinux (bpf_get_current_pid_tgid_proto.func),
 *       so it keeps its ENDBR on IBT kernels and may be called through a
 *       pointer (the kallsyms and kprobe methods do; klp calls it directly).
 *   sysctl_max_map_count  the int behind /proc/sys/vm/max_map_count; the
 *       guest writes a distinctive value first, the module prints what it
 *       reads, stores value + 1, and the guest reads the sysctl again.
 *   c_start, POS 2 (not with the kprobe method, which cannot choose POS):
 *       three static functions of that name; the module prints the address
 *       of the 2nd, which the test compares with the same boot's kallsyms.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/sched.h>
#include <klpsym.h>

/* BPF_CALL_0() defines it with five u64 registers; no header declares it. */
u64 bpf_get_current_pid_tgid(u64, u64, u64, u64, u64);
/* linux/mm.h declared it up to 6.x; 7.x keeps it in mm/ only. */
extern int sysctl_max_map_count;

KLPSYM_FUNC(bpf_get_current_pid_tgid);
KLPSYM_VAR(sysctl_max_map_count);

#if KLPSYM_METHOD != KLPSYM_METHOD_KPROBE
struct seq_file;
void *c_start(struct seq_file *m, loff_t *pos);	/* static in three files */
KLPSYM_VAR_POS(c_start, 2);
#endif

#define TAG "klptest " KBUILD_MODNAME ": "

static int __init methods_init(void)
{
	u64 got = klpsym(bpf_get_current_pid_tgid)(0, 0, 0, 0, 0);
	u64 want = (u64)task_tgid_nr(current) << 32 | task_pid_nr(current);
	int old = READ_ONCE(*klpsym(sysctl_max_map_count));

	WRITE_ONCE(*klpsym(sysctl_max_map_count), old + 1);
	pr_info(TAG "fn=%px pid_tgid=%llx want=%llx match=%d\n",
		(void *)klpsym(bpf_get_current_pid_tgid), got, want, got == want);
	pr_info(TAG "var=%px old=%d new=%d\n", (void *)klpsym(sysctl_max_map_count),
		old, READ_ONCE(*klpsym(sysctl_max_map_count)));
#if KLPSYM_METHOD != KLPSYM_METHOD_KPROBE
	pr_info(TAG "c_start2=%px\n", (void *)klpsym(c_start));
#endif
	return 0;
}

static void __exit methods_exit(void)
{
}

klpsym_module_init(methods_init);
module_exit(methods_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: one source, three methods");
