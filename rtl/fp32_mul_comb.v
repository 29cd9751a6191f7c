// FP32 multiplier, combinational: y = a * b, round to nearest even, flush-to-zero.
// Subnormal inputs are read as zeros; NaN input or 0 * inf gives the canonical quiet NaN
// 0x7FC00000; the sign of zeros and infinities is the XOR of the operand signs.
// Golden model: pimsim.numerics.fp32_mul.
module fp32_mul_comb (
    input  wire [31:0] a,
    input  wire [31:0] b,
    output wire [31:0] y
);
    wire        s  = a[31] ^ b[31];
    wire [7:0]  ea = a[30:23], eb = b[30:23];
    wire [22:0] ma = a[22:0], mb = b[22:0];
    wire za = (ea == 8'd0), zb = (eb == 8'd0);
    wire nan_a = (ea == 8'hFF) && (ma != 23'd0);
    wire nan_b = (eb == 8'hFF) && (mb != 23'd0);
    wire inf_a = (ea == 8'hFF) && (ma == 23'd0);
    wire inf_b = (eb == 8'hFF) && (mb == 23'd0);

    wire [47:0] p   = {24'd0, 1'b1, ma} * {24'd0, 1'b1, mb};  // in [2**46, 2**48)
    wire        top = p[47];
    wire signed [10:0] e = $signed({3'b000, ea}) + $signed({3'b000, eb}) - 11'sd127
                           + $signed({10'd0, top});
    // 24 significant bits + guard + (round, sticky) folded into one sticky bit
    wire [26:0] sig = top ? {p[47:22], |p[21:0]} : {p[46:21], |p[20:0]};

    wire [31:0] y_n;
    fp32_round_pack rp (.s(s), .e(e), .sig(sig), .y(y_n));

    assign y = (nan_a || nan_b || (inf_a && zb) || (inf_b && za)) ? 32'h7FC00000 :
               (inf_a || inf_b) ? {s, 8'hFF, 23'd0} :
               (za || zb)       ? {s, 31'd0} :
                                  y_n;
endmodule
