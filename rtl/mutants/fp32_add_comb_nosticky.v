// MUTANT of rtl/fp32_add_comb.v: the sticky bit of the alignment shift is dropped, so
// bits shifted past the round position no longer influence rounding. Used only to show
// that the bank_mac16 test bench detects a broken rounding rule; never synthesised.
// FP32 adder, combinational: y = a + b, round to nearest even, flush-to-zero.
// Subnormal inputs are read as zeros of their sign; any NaN input, or inf - inf, gives the
// canonical quiet NaN 0x7FC00000; x + (-x) = +0; (-0) + (-0) = -0.
// Golden model: pimsim.numerics.fp32_add (same algorithm, step for step).
module fp32_add_comb (
    input  wire [31:0] a,
    input  wire [31:0] b,
    output wire [31:0] y
);
    wire        sa = a[31], sb = b[31];
    wire [7:0]  ea = a[30:23], eb = b[30:23];
    wire [22:0] ma = a[22:0], mb = b[22:0];
    wire za = (ea == 8'd0), zb = (eb == 8'd0);
    wire nan_a = (ea == 8'hFF) && (ma != 23'd0);
    wire nan_b = (eb == 8'hFF) && (mb != 23'd0);
    wire inf_a = (ea == 8'hFF) && (ma == 23'd0);
    wire inf_b = (eb == 8'hFF) && (mb == 23'd0);

    // order the operands by magnitude (flushed subnormals count as zero)
    wire [30:0] mag_a = za ? 31'd0 : a[30:0];
    wire [30:0] mag_b = zb ? 31'd0 : b[30:0];
    wire        swap  = mag_b > mag_a;
    wire        sL = swap ? sb : sa;
    wire        sS = swap ? sa : sb;
    wire [7:0]  eL = swap ? eb : ea;
    wire [7:0]  eS = swap ? ea : eb;
    wire [22:0] mL = swap ? mb : ma;
    wire [22:0] mS = swap ? ma : mb;

    // align: 24-bit significands with guard, round and sticky bits
    wire [26:0] xl  = {1'b1, mL, 3'b000};
    wire [26:0] xs0 = {1'b1, mS, 3'b000};
    wire [7:0]  d   = eL - eS;
    wire [4:0]  dc  = (d > 8'd31) ? 5'd31 : d[4:0];
    wire [26:0] xsh = xs0 >> dc;
    wire [26:0] xsb = xsh << dc;
    wire        sticky = (xsb != xs0);           // OR of the bits shifted out
    wire [26:0] xs  = xsh;  // MUTANT: sticky bit dropped (truncating alignment)

    // add or subtract (|large| >= |small|, so the difference is never negative)
    wire        sub   = sL ^ sS;
    wire [27:0] total = sub ? ({1'b0, xl} - {1'b0, xs}) : ({1'b0, xl} + {1'b0, xs});
    wire        ovf   = total[27];
    wire [26:0] sig_a = ovf ? {total[27:2], total[1] | total[0]} : total[26:0];

    // normalise left by the leading-zero count (cancellation): logarithmic shifter
    wire        z16 = (sig_a[26:11] == 16'd0);
    wire [26:0] n16 = z16 ? {sig_a[10:0], 16'd0} : sig_a;
    wire        z8  = (n16[26:19] == 8'd0);
    wire [26:0] n8  = z8 ? {n16[18:0], 8'd0} : n16;
    wire        z4  = (n8[26:23] == 4'd0);
    wire [26:0] n4  = z4 ? {n8[22:0], 4'd0} : n8;
    wire        z2  = (n4[26:25] == 2'd0);
    wire [26:0] n2  = z2 ? {n4[24:0], 2'd0} : n4;
    wire        z1  = ~n2[26];
    wire [26:0] sig_n = z1 ? {n2[25:0], 1'b0} : n2;
    wire [4:0]  lz  = {z16, z8, z4, z2, z1};
    wire signed [10:0] e_n = $signed({3'b000, eL}) + $signed({10'd0, ovf}) - $signed({6'd0, lz});

    wire [31:0] y_n;
    fp32_round_pack rp (.s(sL), .e(e_n), .sig(sig_n), .y(y_n));

    assign y = (nan_a || nan_b || (inf_a && inf_b && (sa != sb))) ? 32'h7FC00000 :
               inf_a          ? a :
               inf_b          ? b :
               (za && zb)     ? {sa & sb, 31'd0} :
               za             ? b :
               zb             ? a :
               (total == 28'd0) ? 32'd0 :
                                y_n;
endmodule
