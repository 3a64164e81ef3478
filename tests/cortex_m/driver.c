/* Runs NAME_predict_int8 on the int8 samples in inputs.i8 and NAME_predict on the float32
 * samples in inputs.f32 (files read through semihosting), printing one line per sample:
 * "int8 v v ..." with the int8 outputs, "float h h ..." with the float outputs' bit patterns in
 * hex; then "done N M" with the counts. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "NAME.h"

static int run_int8(void)
{
    int8_t input[UPPER_INPUT_SIZE];
    int8_t output[UPPER_OUTPUT_SIZE];
    int n = 0;
    FILE *in = fopen("inputs.i8", "rb");
    if (in == NULL)
        return -1;
    while (fread(input, 1, sizeof input, in) == sizeof input) {
        if (NAME_predict_int8(input, output) != 0)
            return -2;
        printf("int8");
        for (int i = 0; i < UPPER_OUTPUT_SIZE; ++i)
            printf(" %d", (int)output[i]);
        printf("\n");
        ++n;
    }
    fclose(in);
    return n;
}

#ifndef MNISTNET_NO_FLOAT
static int run_float(void)
{
    float input[UPPER_INPUT_SIZE];
    float output[UPPER_OUTPUT_SIZE];
    int n = 0;
    FILE *in = fopen("inputs.f32", "rb");
    if (in == NULL)
        return -1;
    while (fread(input, sizeof input[0], UPPER_INPUT_SIZE, in) == UPPER_INPUT_SIZE) {
        if (NAME_predict(input, output) != 0)
            return -2;
        printf("float");
        for (int i = 0; i < UPPER_OUTPUT_SIZE; ++i) {
            uint32_t bits;
            memcpy(&bits, &output[i], sizeof bits);
            printf(" %08lx", (unsigned long)bits);
        }
        printf("\n");
        ++n;
    }
    fclose(in);
    return n;
}
#else
static int run_float(void)
{
    return 0;
}
#endif

int main(void)
{
    const int n_int8 = run_int8();
    const int n_float = run_float();
    printf("done %d %d\n", n_int8, n_float);
    return n_int8 < 0 || n_float < 0;
}
