/* The least a Cortex-M4 program needs under QEMU: the vector table (initial stack pointer,
 * reset handler, a handler for faults) and a reset handler that sets up .data and .bss,
 * enables the FPU if the program uses it, opens the semihosting console and files (newlib's
 * librdimon), runs main and exits through semihosting (QEMU then quits). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern uint32_t _data_start, _data_end, _data_load, _bss_start, _bss_end, _stack_top;
extern int main(void);
extern void initialise_monitor_handles(void);

void reset_handler(void);
void fault_handler(void);

__attribute__((section(".vectors"), used))
static void (*const vectors[16])(void) = {
    (void (*)(void))&_stack_top, reset_handler,
    fault_handler, fault_handler, fault_handler, fault_handler, fault_handler,  /* NMI..Usage */
};

void reset_handler(void)
{
    const uint32_t *from = &_data_load;
    for (uint32_t *to = &_data_start; to < &_data_end; ++to)
        *to = *from++;
    for (uint32_t *to = &_bss_start; to < &_bss_end; ++to)
        *to = 0;
#if defined(__ARM_FP)
    /* Built for the FPU (-mfloat-abi=hard or softfp): grant access to it (CPACR, CP10 and
     * CP11) before any float instruction. */
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20;
    __asm volatile("dsb\n\tisb");
#endif
    initialise_monitor_handles();
    exit(main());
}

void fault_handler(void)
{
    puts("fault");
    exit(70);
}
