/* SPDX-License-Identifier: GPL-2.0 */
/*
 * klpsym.h -- reach kernel symbols that are not exported, by one of three
 * methods chosen when the module is built (KLPSYM_METHOD):
 *
 *   KLPSYM_METHOD_KLP       klpsym(x) is &x: ordinary direct references,
 *                           which 'klpsym build'/'klpsym convert' turn into
 *                           livepatch relocations (Linux >= 5.8 with
 *                           CONFIG_LIVEPATCH=y).  Direct calls: IBT-safe.
 *   KLPSYM_METHOD_KALLSYMS  every declared symbol is a module parameter that
 *                           'klpsym insmod' fills from /proc/kallsyms (POS
 *                           aware); each address is checked against the
 *                           kernel's own kallsyms when the parameter is set.
 *   KLPSYM_METHOD_KPROBE    the addresses are looked up when the module
 *                           initialises, through kallsyms_lookup_name found
 *                           with a kprobe (CONFIG_KPROBES=y); first entry of
 *                           a name only (POS 0 or 1).
 *
 * Use, in the module's Kbuild:   ccflags-y += $(shell klpsym cflags --method kallsyms)
 *
 *	#include <klpsym.h>
 *	KLPSYM_FUNC(kallsyms_lookup_name);	// a function you will call
 *	KLPSYM_VAR(dmesg_restrict);		// a variable (or an address only)
 *	KLPSYM_FUNC_POS(c_start, 2);		// the 2nd of several same-name entries
 *
 *	static int __init my_init(void)
 *	{
 *		int err = klpsym_init();	// refuses if any symbol is missing
 *		if (err)
 *			return err;
 *		pr_info("%lx %d\n", klpsym(kallsyms_lookup_name)("init_task"),
 *			*klpsym(dmesg_restrict));
 *		return 0;
 *	}
 *
 * klpsym(x) has the type of &x, so x must be declared (by a kernel header or
 * by you); it is never referenced, so modpost sees no undefined symbol.
 * Declare each symbol once per module (the parameter is named after it).
 *
 * IBT (x86 CONFIG_X86_KERNEL_IBT, Linux >= 5.18): the kallsyms and kprobe
 * methods call functions through pointers, i.e. indirectly.  An indirect
 * call must land on an ENDBR64 instruction.  objtool --ibt lists the ENDBR of
 * every function whose address vmlinux never takes, and apply_seal_endbr()
 * (arch/x86/kernel/alternative.c, 6.1, 6.12 and 7.x alike) overwrites them
 * at boot with a poison NOP, whatever the CPU (0x001f0f66 "osp nopl (%rax)"
 * up to 6.12, 0xd6401f0f "nopl -42(%rax)" in 7.x; asm/ibt.h
 * gen_endbr_poison()).  Such a "sealed" function raises #CP when called
 * through a pointer on an IBT CPU, and no trampoline can help: IBT wants the
 * ENDBR at the target itself.  So for every KLPSYM_FUNC this header reads the
 * function's first four bytes and refuses (the module does not load) unless
 * they are ENDBR64, on every kernel built with CONFIG_X86_KERNEL_IBT (even
 * on a CPU without IBT, so a module behaves the same on every machine).
 * Sealed functions need the klp method, which makes direct calls.
 * Kernels built with clang's kCFI/FineIBT (CONFIG_CFI_CLANG) also check a
 * type hash on indirect calls; klpsym(x) has x's declared type, so the hash
 * matches, but this is untested (Debian builds with gcc).
 */
#ifndef KLPSYM_H
#define KLPSYM_H

#define KLPSYM_METHOD_KLP	1
#define KLPSYM_METHOD_KALLSYMS	2
#define KLPSYM_METHOD_KPROBE	3

#ifndef KLPSYM_METHOD
#error "klpsym.h: no method chosen; add to the Kbuild: ccflags-y += $(shell klpsym cflags --method klp|kallsyms|kprobe)"
#endif

#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/kallsyms.h>
#include <linux/kernel.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/version.h>

/*
 * Livepatch modules (MODULE_INFO(livepatch, "Y")): which object and which
 * of several same-name symbols a reference means, as the kernel's
 * never-merged klp-convert (v7, 2023) spelled it, for 'klpsym convert' and
 * 'klpsym build' to read (and remove from the output):
 *
 *	extern int homonym(void);		// a static of module lp_target
 *	KLP_MODULE_RELOC(lp_target) lp_target_relocs[] = {
 *		KLP_SYMPOS(homonym, 2),		// its 2nd "homonym" (module kallsyms order)
 *	};
 *
 * Each entry is a struct klp_module_reloc (12 bytes, packed) in section
 * ".klp.module_relocs.<obj>"; the array is kept even if static and unused.
 * A kernel header that defines these already (a patched linux/livepatch.h)
 * wins.
 */
#ifndef KLP_MODULE_RELOC
struct klp_module_reloc {
	union {
		void *sym;
		u64 sym64;	/* 64 bits whatever the pointer size */
	};
	u32 sympos;
} __attribute__((__packed__));

#define KLP_MODULE_RELOC(obj)						\
	struct klp_module_reloc						\
	__attribute__((__used__, __section__(".klp.module_relocs." #obj)))
#define KLP_SYMPOS(symbol, pos)						\
	{ .sym = (void *)&(symbol), .sympos = (pos) }
#endif

/* 'klpsym insmod' reads these from .modinfo: the method, then one
 * "NAME,POS,func|var" per declared symbol. */
#define __KLPSYM_INFO(name, pos, kind) \
	MODULE_INFO(klpsym_symbol, #name "," #pos "," kind)

#if KLPSYM_METHOD == KLPSYM_METHOD_KLP

MODULE_INFO(klpsym_method, "klp");

#define KLPSYM_FUNC_POS(name, pos)	__KLPSYM_INFO(name, pos, "func")
#define KLPSYM_VAR_POS(name, pos)	__KLPSYM_INFO(name, pos, "var")
#define klpsym(name)			(&(name))

/* The module loader resolved every reference before init: nothing to do. */
static inline int klpsym_init(void)
{
	return 0;
}

#elif KLPSYM_METHOD == KLPSYM_METHOD_KALLSYMS || KLPSYM_METHOD == KLPSYM_METHOD_KPROBE

#ifndef CONFIG_KALLSYMS
#error "klpsym.h: the kallsyms and kprobe methods need CONFIG_KALLSYMS=y in the target kernel"
#endif

struct klpsym_sym {
	const char *name;
	unsigned int pos;	/* 0: unique name, N: N-th entry in kallsyms order */
	bool func;		/* called through a pointer: must start with ENDBR on IBT kernels */
	unsigned long addr;
};

#define __KLPSYM_DECLARE(sym, p, is_func, kind)				\
	static struct klpsym_sym __klpsym_##sym = {				\
		.name = #sym, .pos = (p), .func = (is_func) };			\
	module_param_cb(sym, &klpsym__param_ops, &__klpsym_##sym, 0);		\
	__MODULE_PARM_TYPE(sym, "klpsym");					\
	MODULE_PARM_DESC(sym, "address of " #sym ", set by klpsym");		\
	__KLPSYM_INFO(sym, p, kind)

#define KLPSYM_FUNC_POS(name, pos)	__KLPSYM_DECLARE(name, pos, true, "func")
#define KLPSYM_VAR_POS(name, pos)	__KLPSYM_DECLARE(name, pos, false, "var")
#define klpsym(sym)			((typeof(&(sym)))__klpsym_##sym.addr)

#define KLPSYM_ENDBR64	0xfa1e0ff3U	/* f3 0f 1e fa, little-endian */

/*
 * Does @addr start a function that may be called through a pointer?  Always
 * on kernels without CONFIG_X86_KERNEL_IBT; otherwise only if it begins with
 * ENDBR64 (see the top of this file).  *@insn gets the four bytes.
 */
static inline bool klpsym__callable(unsigned long addr, u32 *insn)
{
	*insn = 0;
#ifdef CONFIG_X86_KERNEL_IBT
	/* copy_from_kernel_nofault(): Linux 5.8 (probe_kernel_read() before),
	 * and IBT came in 5.18, so it is always there when needed. */
	if (copy_from_kernel_nofault(insn, (void *)addr, sizeof(*insn)))
		return false;
	return *insn == KLPSYM_ENDBR64;
#else
	return true;
#endif
}

/*
 * Is @addr the first byte of a kallsyms entry called @name?  sprint_symbol()
 * prints "NAME+0xOFF/0xSIZE"; for several names at one address it prints
 * the first in kallsyms order (get_symbol_pos()), and 'klpsym insmod' refuses
 * such aliases, so a mismatch here means a wrong or stale address (another
 * boot: KASLR moved the kernel).
 */
static inline bool klpsym__is_start_of(const char *name, unsigned long addr,
				       char *buf)
{
	size_t n = strlen(name);

	sprint_symbol(buf, addr);
	return strncmp(buf, name, n) == 0 && strncmp(buf + n, "+0x0/", 5) == 0;
}

/* Checks shared by both methods; on success the symbol gets @addr. */
static inline int klpsym__accept(struct klpsym_sym *s, unsigned long addr,
				 const char *how)
{
	char buf[KSYM_SYMBOL_LEN];
	u32 insn;

	if (!addr) {
		pr_err("klpsym: %s: address 0 (%s)\n", s->name, how);
		return -EINVAL;
	}
	if (!klpsym__is_start_of(s->name, addr, buf)) {
		pr_err("klpsym: %s: %px is %s, not the start of %s (%s); stale "
		       "address from another boot?\n",
		       s->name, (void *)addr, buf[0] ? buf : "no kallsyms symbol",
		       s->name, how);
		return -EINVAL;
	}
	if (s->func && !klpsym__callable(addr, &insn)) {
		pr_err("klpsym: %s: cannot be called through a pointer on this IBT "
		       "kernel: it starts with %08x, not ENDBR64 (sealed at boot, as "
		       "vmlinux never takes its address); build the module with the "
		       "klp method, which calls it directly\n", s->name, insn);
		return -EPERM;
	}
	s->addr = addr;
	return 0;
}

#if KLPSYM_METHOD == KLPSYM_METHOD_KALLSYMS

MODULE_INFO(klpsym_method, "kallsyms");

/*
 * The parameter callbacks are weak globals, not statics, so that all the
 * files of a composite module share one klpsym__param_ops (the linker keeps
 * one definition) and klpsym_init() finds every declared symbol by it.
 */
int __weak klpsym__param_set(const char *val, const struct kernel_param *kp)
{
	struct klpsym_sym *s = kp->arg;
	unsigned long addr;
	int err = kstrtoul(val, 0, &addr);

	if (err) {
		pr_err("klpsym: %s=%s: not an address\n", s->name, val);
		return err;
	}
	return klpsym__accept(s, addr, "given by parameter");
}

int __weak klpsym__param_get(char *buf, const struct kernel_param *kp)
{
	return -EPERM;	/* never shown: the parameters have no sysfs file */
}

const struct kernel_param_ops klpsym__param_ops __weak = {
	.set = klpsym__param_set,
	.get = klpsym__param_get,
};

/*
 * Call first in module init: fails with -EINVAL, naming each symbol whose
 * parameter was not given (insmod without 'klpsym insmod').
 */
static inline int klpsym_init(void)
{
	const struct kernel_param *kp = THIS_MODULE->kp;
	unsigned int i, missing = 0;

	for (i = 0; i < THIS_MODULE->num_kp; i++) {
		struct klpsym_sym *s = kp[i].arg;

		if (kp[i].ops != &klpsym__param_ops || s->addr)
			continue;
		pr_err("klpsym: %s: no address given; load the module with "
		       "'klpsym insmod %s.ko' (it passes %s=ADDRESS from /proc/kallsyms)\n",
		       s->name, THIS_MODULE->name, s->name);
		missing++;
	}
	return missing ? -EINVAL : 0;
}

#else /* KLPSYM_METHOD_KPROBE */

#ifndef CONFIG_KPROBES
#error "klpsym.h: the kprobe method needs CONFIG_KPROBES=y in the target kernel; use --method kallsyms (klpsym insmod) or klp"
#endif

#include <linux/kprobes.h>

MODULE_INFO(klpsym_method, "kprobe");

int __weak klpsym__param_set(const char *val, const struct kernel_param *kp)
{
	struct klpsym_sym *s = kp->arg;

	pr_err("klpsym: %s: this module looks its symbols up itself (kprobe "
	       "method); load it without %s=\n", s->name, s->name);
	return -EINVAL;
}

const struct kernel_param_ops klpsym__param_ops __weak = {
	.set = klpsym__param_set,
};

/*
 * The address of function @name, found by a kprobe, or 0.  register_kprobe()
 * looks the name up in kallsyms itself; on x86 since v5.18 (commit
 * cc66bb914578 "x86/ibt,kprobes: Cure sym+0 equals fentry woes", the IBT
 * series)
 * arch_adjust_kprobe_addr() then moves kp.addr past an ENDBR -- or its seal
 * poison, which is_endbr() also accepts -- at offset 0, so kp.addr may be
 * the function + 4: calling that would jump into the middle of the function
 * and, with IBT, onto a non-ENDBR instruction.  Whichever of kp.addr - 4 and
 * kp.addr kallsyms calls the start of @name is the function.
 */
static inline unsigned long klpsym__kprobe_addr(const char *name, int *err)
{
	/* Disabled: registered for its address only, never armed (no int3 is
	 * written into the function). */
	struct kprobe kp = { .symbol_name = name, .flags = KPROBE_FLAG_DISABLED };
	char buf[KSYM_SYMBOL_LEN];
	unsigned long addr;

	*err = register_kprobe(&kp);
	if (*err)
		return 0;
	addr = (unsigned long)kp.addr;
	unregister_kprobe(&kp);
	if (klpsym__is_start_of(name, addr - 4, buf))
		return addr - 4;
	if (klpsym__is_start_of(name, addr, buf))
		return addr;
	*err = -ENOENT;
	return 0;
}

typedef unsigned long (*klpsym__lookup_t)(const char *name);
/* BPF_CALL_4(bpf_kallsyms_lookup_name, ...) (kernel/bpf/syscall.c, 5.16+):
 * the BPF_CALL_x wrappers take five u64 registers. */
typedef u64 (*klpsym__bpf_lookup_t)(u64 name, u64 size, u64 flags, u64 res, u64 unused);

/*
 * A callable name lookup, tried in this order:
 *  1. kallsyms_lookup_name() itself while it was exported (< 5.7: commit
 *     0bd476e6c671 unexported it);
 *  2. kallsyms_lookup_name() found by a kprobe, if it may be called through
 *     a pointer (not sealed: see the top of this file);
 *  3. bpf_kallsyms_lookup_name() found by a kprobe: a BPF helper, so vmlinux
 *     takes its address (bpf_kallsyms_lookup_name_proto.func) and it keeps
 *     its ENDBR; it calls kallsyms_lookup_name() directly.  It answers only
 *     if the caller may see kernel addresses (bpf_dump_raw_ok(): CAP_SYSLOG,
 *     kptr_restrict < 2), as insmod by root normally may.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 7, 0)
static inline unsigned long klpsym__lookup(const char *name, const char **via, int *err)
{
	*via = "kallsyms_lookup_name (exported)";
	*err = 0;
	return kallsyms_lookup_name(name);
}
#else
static inline unsigned long klpsym__lookup(const char *name, const char **via, int *err)
{
	static unsigned long fn;
	static bool bpf;
	u32 insn;

	if (!fn) {
		unsigned long a = klpsym__kprobe_addr("kallsyms_lookup_name", err);

		if (a && klpsym__callable(a, &insn)) {
			fn = a;
		} else {
			int e2;

			if (a)
				pr_info("klpsym: kallsyms_lookup_name is sealed (starts with "
					"%08x), using bpf_kallsyms_lookup_name\n", insn);
			a = klpsym__kprobe_addr("bpf_kallsyms_lookup_name", &e2);
			if (!a || !klpsym__callable(a, &insn)) {
				pr_err("klpsym: no callable kallsyms lookup on this kernel "
				       "(kallsyms_lookup_name: %d, bpf_kallsyms_lookup_name: "
				       "%d, %08x); build the module with the klp or kallsyms "
				       "method\n", *err, e2, insn);
				*err = -ENOENT;
				return 0;
			}
			fn = a;
			bpf = true;
		}
	}
	*err = 0;
	if (bpf) {
		u64 res = 0;
		long r = (long)((klpsym__bpf_lookup_t)fn)((u64)(unsigned long)name,
							   strlen(name) + 1, 0,
							   (u64)(unsigned long)&res, 0);

		*via = "bpf_kallsyms_lookup_name (kprobe)";
		if (r && r != -ENOENT)
			*err = (int)r;
		return (unsigned long)res;
	}
	*via = "kallsyms_lookup_name (kprobe)";
	return ((klpsym__lookup_t)fn)(name);
}
#endif

/*
 * Call first in module init: looks up every declared symbol; fails (and the
 * module does not load) if one is missing, at POS > 1, or not callable.
 */
static inline int klpsym_init(void)
{
	const struct kernel_param *kp = THIS_MODULE->kp;
	unsigned int i;

	for (i = 0; i < THIS_MODULE->num_kp; i++) {
		struct klpsym_sym *s = kp[i].arg;
		const char *via = "lookup";
		unsigned long addr;
		int err;

		if (kp[i].ops != &klpsym__param_ops || s->addr)
			continue;
		if (s->pos > 1) {
			pr_err("klpsym: %s,%u: the kprobe method finds only the first "
			       "entry of a name (kallsyms_lookup_name); use the kallsyms "
			       "or klp method for POS > 1\n", s->name, s->pos);
			return -EINVAL;
		}
		addr = klpsym__lookup(s->name, &via, &err);
		if (err)
			return err;
		if (!addr) {
			pr_err("klpsym: %s: not in kallsyms (%s)\n", s->name, via);
			return -ENOENT;
		}
		err = klpsym__accept(s, addr, via);
		if (err)
			return err;
		pr_info("klpsym: %s found by %s\n", s->name, via);
	}
	return 0;
}

#endif /* KLPSYM_METHOD_KPROBE */

#else
#error "klpsym.h: KLPSYM_METHOD must be KLPSYM_METHOD_KLP, KLPSYM_METHOD_KALLSYMS or KLPSYM_METHOD_KPROBE"
#endif

#define KLPSYM_FUNC(name)	KLPSYM_FUNC_POS(name, 0)
#define KLPSYM_VAR(name)	KLPSYM_VAR_POS(name, 0)

/* module_init(fn), with klpsym_init() run first. */
#define klpsym_module_init(fn)							\
	static int __init __klpsym_init_##fn(void)				\
	{									\
		int err = klpsym_init();					\
		return err ? err : fn();					\
	}									\
	module_init(__klpsym_init_##fn)

#endif /* KLPSYM_H */
