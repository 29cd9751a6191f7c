// Bank MAC unit of a PIM-GPT / GDDR6-AiM bank: every beat multiplies 16 BF16 weights by
// 16 BF16 inputs, adds the 16 exact FP32 products in a pipelined 4-level pairwise adder
// tree and adds the tree sum into an FP32 accumulator.
//
//   tree = (((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7))) + (((p8+p9)+(p10+p11))+((p12+p13)+(p14+p15)))
//   acc  = acc + tree            (every add is fp32_add_comb: RNE, flush-to-zero)
//
// Control travels down the pipeline with its beat, so a beat's clear / MAC / read happen
// in issue order, in that order within one beat:
//   clear    : the accumulator becomes +0 (before this beat's MAC, if any)
//   in_valid : acc = acc + tree(w * x)
//   rd       : rd_data = the accumulator after this beat's clear and MAC, with rd_valid
// stall = 1 freezes every pipeline register and the accumulator; inputs are ignored in
// that cycle and rd_valid is 0 after it. Throughput: one beat per non-stalled cycle.
// Latency: a beat sampled at rising edge k (stall low) updates acc and drives
// rd_valid/rd_data after rising edge k+5 (5 cycles) if no stall intervenes.
// Golden model: pimsim.numerics.bank_mac16 (and bank_dot).
module bank_mac16 (
    input  wire         clk,
    input  wire         rst_n,     // synchronous, active low: empties the pipeline, acc = +0
    input  wire         stall,     // 1: hold the pipeline this cycle
    input  wire         in_valid,  // this beat carries a MAC (w, x valid)
    input  wire         clear,     // this beat clears the accumulator first
    input  wire         rd,        // this beat reads the accumulator last
    input  wire [255:0] w,         // 16 BF16 weights, lane i = w[16*i+15:16*i]
    input  wire [255:0] x,         // 16 BF16 inputs,  lane i = x[16*i+15:16*i]
    output reg          rd_valid,  // rd_data holds a read result (one cycle per read)
    output reg  [31:0]  rd_data,   // FP32 accumulator value of the read
    output reg  [31:0]  acc        // FP32 accumulator (observation port)
);
    // control of each stage: {rd, clear, valid}
    reg [2:0] c1, c2, c3, c4, c5;
    reg [511:0] p1;   // 16 products
    reg [255:0] l1;   // 8 sums
    reg [127:0] l2;   // 4 sums
    reg [63:0]  l3;   // 2 sums
    reg [31:0]  s5;   // tree sum

    wire [511:0] p_c;
    wire [255:0] l1_c;
    wire [127:0] l2_c;
    wire [63:0]  l3_c;
    wire [31:0]  s_c;

    genvar i;
    generate
        for (i = 0; i < 16; i = i + 1) begin : lane
            bf16_mul mul (.a(w[16*i +: 16]), .b(x[16*i +: 16]), .y(p_c[32*i +: 32]));
        end
        for (i = 0; i < 8; i = i + 1) begin : tree1
            fp32_add_comb add (.a(p1[64*i +: 32]), .b(p1[64*i+32 +: 32]), .y(l1_c[32*i +: 32]));
        end
        for (i = 0; i < 4; i = i + 1) begin : tree2
            fp32_add_comb add (.a(l1[64*i +: 32]), .b(l1[64*i+32 +: 32]), .y(l2_c[32*i +: 32]));
        end
        for (i = 0; i < 2; i = i + 1) begin : tree3
            fp32_add_comb add (.a(l2[64*i +: 32]), .b(l2[64*i+32 +: 32]), .y(l3_c[32*i +: 32]));
        end
    endgenerate
    fp32_add_comb tree4 (.a(l3[31:0]), .b(l3[63:32]), .y(s_c));

    // accumulate stage
    wire [31:0] base = c5[1] ? 32'd0 : acc;
    wire [31:0] sum;
    fp32_add_comb accum (.a(base), .b(s5), .y(sum));
    wire [31:0] acc_next = c5[0] ? sum : base;

    always @(posedge clk) begin
        if (!rst_n) begin
            c1 <= 3'd0; c2 <= 3'd0; c3 <= 3'd0; c4 <= 3'd0; c5 <= 3'd0;
            acc <= 32'd0;
            rd_valid <= 1'b0;
            rd_data <= 32'd0;
        end else if (stall) begin
            rd_valid <= 1'b0;
        end else begin
            c1 <= {rd, clear, in_valid};
            c2 <= c1; c3 <= c2; c4 <= c3; c5 <= c4;
            p1 <= p_c;
            l1 <= l1_c;
            l2 <= l2_c;
            l3 <= l3_c;
            s5 <= s_c;
            acc <= acc_next;
            rd_valid <= c5[2];
            if (c5[2]) rd_data <= acc_next;
        end
    end
endmodule
